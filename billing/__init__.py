"""Payments: Stripe Checkout, webhooks, refunds, Connect payouts; offline provider."""
