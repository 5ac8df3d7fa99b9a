"""The admin site (aiohttp + jinja2), mounted at /admin."""
