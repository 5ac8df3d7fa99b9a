"""The domain, free of any provider SDK."""
