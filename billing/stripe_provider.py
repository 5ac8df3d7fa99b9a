"""Stripe behind one small class: Checkout links, refunds, Connect accounts and transfers."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import stripe
from sqlalchemy.ext.asyncio import AsyncSession

from billing.errors import BillingError, ProviderRejected, ProviderUnavailable
from billing.payments import CheckoutPayment
from billing.refunds import ProviderRefund
from core.config import Config
from core.models import Checkout, Customer, Mechanic, Payout
from core.store.records import CheckoutRecord

log = logging.getLogger("autodoctor.billing.stripe")

T = TypeVar("T")

# Stripe's refund reasons are a fixed list; ours (expired_unmatched, customer_cancelled, …)
# travel in the refund's metadata instead.
_STRIPE_REFUND_REASON = "requested_by_customer"


@dataclass(frozen=True)
class AccountStatus:
    """What Stripe says about a mechanic's connected account."""

    id: str
    charges_enabled: bool
    payouts_enabled: bool
    details_submitted: bool


class StripePayments:
    """The Stripe implementation of core.payments.PaymentPort (and of refunds and payouts)."""

    provider = "stripe"

    def __init__(self, config: Config, *, max_network_retries: int = 2,
                 timeout_seconds: float = 30.0) -> None:
        api_key = config.secrets.stripe_secret_key
        if not api_key:
            raise BillingError("STRIPE_SECRET_KEY is not set; set it or use the offline checkout")
        self._config = config
        self._public_url = config.public_url.rstrip("/")
        api_base = config.stripe.api_base.rstrip("/")
        self._http = stripe.AIOHTTPClient(timeout=aiohttp.ClientTimeout(total=timeout_seconds))
        # Every base address points at [stripe] api_base, so a stand-in replaces all of Stripe.
        self._client = stripe.StripeClient(
            api_key, http_client=self._http, max_network_retries=max_network_retries,
            base_addresses={"api": api_base, "connect": api_base, "files": api_base,
                            "meter_events": api_base})

    async def close(self) -> None:
        """Close the HTTP session (at app shutdown)."""
        await self._http.close_async()

    # ------------------------------------------------------------------ Checkout

    async def create_checkout(self, session: AsyncSession, checkout: CheckoutRecord) -> str:
        """One Checkout Session for this checkout row; stores its id and returns its URL."""
        plan = self._config.product(checkout.plan)
        ref = checkout.ref
        if plan.stripe_price_id:
            line_item: dict[str, Any] = {"price": plan.stripe_price_id, "quantity": 1}
        else:
            line_item = {"quantity": 1, "price_data": {
                "currency": checkout.currency, "unit_amount": checkout.amount_cents,
                "product_data": {"name": f"AutoDoctor {plan.name}",
                                 "description": f"{plan.minutes} minutes with a "
                                                "certified mechanic"}}}
        metadata = {"checkout": ref, "intake": str(checkout.intake_id),
                    "customer": str(checkout.customer_id), "plan": checkout.plan}
        params: dict[str, Any] = {
            "mode": "payment",
            "line_items": [line_item],
            "client_reference_id": ref,
            "metadata": metadata,
            # The charge carries the same ids, and a transfer group so the mechanic's payout
            # can be tied to it (Connect "separate charges and transfers").
            "payment_intent_data": {"metadata": metadata, "transfer_group": ref},
            "success_url": f"{self._public_url}/pay/{ref}/done",
            "cancel_url": f"{self._public_url}/pay/{ref}/cancelled",
        }
        if checkout.expires_at is not None:
            params["expires_at"] = int(checkout.expires_at.timestamp())
        customer = await session.get(Customer, checkout.customer_id)
        if customer is not None and customer.stripe_customer_id:
            params["customer"] = customer.stripe_customer_id
        created = await self._call(
            f"creating the payment link for checkout {ref}",
            self._client.v1.checkout.sessions.create_async(
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": f"checkout:{ref}"}))
        if not created.url:
            raise ProviderRejected(f"Stripe returned no payment URL for checkout {ref}")
        checkout.update(provider_session_id=created.id)
        log.info("checkout=%s stripe_session=%s created amount=%s %s", ref, created.id,
                 checkout.amount_cents, checkout.currency)
        return str(created.url)

    async def expire_checkout(self, checkout: Checkout) -> bool:
        """Close the hosted page so it can no longer be paid; False if it was not open."""
        if not checkout.provider_session_id:
            return False
        try:
            await self._call(
                f"expiring checkout {checkout.ref}",
                self._client.v1.checkout.sessions.expire_async(
                    checkout.provider_session_id,
                    options={"idempotency_key": f"expire:{checkout.ref}"}))
        except ProviderRejected:
            return False  # already complete or expired on Stripe's side
        return True

    async def charge_for_payment(self, payment_intent_id: str) -> str | None:
        """The charge id behind a PaymentIntent (a transfer's source_transaction)."""
        intent = await self._call(
            f"looking up payment {payment_intent_id}",
            self._client.v1.payment_intents.retrieve_async(payment_intent_id))
        charge = intent.latest_charge
        if isinstance(charge, str) or charge is None:
            return charge
        return str(charge.id)  # expanded into a Charge

    async def payment_of(self, checkout: Checkout) -> CheckoutPayment | None:
        """Stripe's word on whether the checkout was paid (for a webhook late or lost)."""
        if not checkout.provider_session_id:
            return None
        found = await self._call(
            f"reading checkout {checkout.ref}",
            self._client.v1.checkout.sessions.retrieve_async(checkout.provider_session_id))
        intent = found.payment_intent
        return CheckoutPayment(
            paid=found.payment_status == "paid",
            payment_intent_id=intent if isinstance(intent, str) or intent is None
            else str(intent.id))

    async def receipt_url(self, checkout: Checkout) -> str | None:
        """Stripe's hosted receipt of the checkout's charge; None when it has none (yet)."""
        what = f"reading the receipt of checkout {checkout.ref}"
        charge: Any
        if checkout.charge_id:
            charge = await self._call(what, self._client.v1.charges.retrieve_async(
                checkout.charge_id))
        elif checkout.payment_intent_id:
            intent = await self._call(what, self._client.v1.payment_intents.retrieve_async(
                checkout.payment_intent_id, params={"expand": ["latest_charge"]}))
            charge = intent.latest_charge
        else:
            return None
        url = getattr(charge, "receipt_url", None) if charge is not None else None
        return url if isinstance(url, str) else None

    # ------------------------------------------------------------------ refunds

    async def refund(self, checkout: Checkout, *, reason: str) -> ProviderRefund:
        """Refund the checkout's payment in full; Stripe's idempotency makes repeats one refund."""
        params: dict[str, Any] = {
            "reason": _STRIPE_REFUND_REASON,
            "metadata": {"checkout": checkout.ref, "reason": reason},
        }
        if checkout.payment_intent_id:
            params["payment_intent"] = checkout.payment_intent_id
        elif checkout.charge_id:
            params["charge"] = checkout.charge_id
        else:
            raise ProviderRejected(f"checkout {checkout.ref} has no Stripe payment to refund")
        try:
            refund = await self._call(
                f"refunding checkout {checkout.ref}",
                self._client.v1.refunds.create_async(
                    params=params,  # type: ignore[arg-type]
                    options={"idempotency_key": f"refund:{checkout.ref}"}))
        except ProviderRejected as exc:
            if exc.code != "charge_already_refunded":
                raise
            # Refunded already: in Stripe's dashboard, or by us more than 24 hours ago (when
            # Stripe forgets idempotency keys) with our record of it lost.
            log.info("checkout=%s was already refunded on Stripe", checkout.ref)
            return ProviderRefund(id=None, status="succeeded")
        status = {"succeeded": "succeeded", "failed": "failed",
                  "canceled": "failed"}.get(refund.status or "", "pending")
        log.info("checkout=%s refund=%s status=%s", checkout.ref, refund.id, refund.status)
        return ProviderRefund(id=refund.id, status=status)

    # ------------------------------------------------------------------ Connect

    async def create_connected_account(self, mechanic: Mechanic) -> str:
        """A Stripe Express account for the mechanic (one per mechanic, even if asked twice)."""
        account = await self._call(
            f"creating a payout account for mechanic {mechanic.id}",
            self._client.v1.accounts.create_async(
                params={"type": "express",
                        "capabilities": {"transfers": {"requested": True}},
                        "business_profile": {"product_description": "Car repair advice "
                                                                    "through AutoDoctor"},
                        "metadata": {"mechanic": str(mechanic.id)}},
                options={"idempotency_key": f"connect-account:{mechanic.id}"}))
        log.info("mechanic=%s stripe_account=%s created", mechanic.id, account.id)
        return str(account.id)

    async def onboarding_link(self, account_id: str, *, refresh_url: str,
                              return_url: str) -> str:
        """A single-use Account Link where the mechanic completes Stripe onboarding."""
        link = await self._call(
            f"creating an onboarding link for account {account_id}",
            self._client.v1.account_links.create_async(params={
                "account": account_id, "type": "account_onboarding",
                "refresh_url": refresh_url, "return_url": return_url}))
        return str(link.url)

    async def account_status(self, account_id: str) -> AccountStatus:
        """Whether the connected account can receive transfers yet."""
        account = await self._call(f"reading account {account_id}",
                                   self._client.v1.accounts.retrieve_async(account_id))
        return AccountStatus(id=str(account.id),
                             charges_enabled=bool(account.charges_enabled),
                             payouts_enabled=bool(account.payouts_enabled),
                             details_submitted=bool(account.details_submitted))

    async def transfer(self, payout: Payout, *, destination: str,
                       source_transaction: str | None, transfer_group: str | None) -> str:
        """Send the mechanic's share to their connected account; returns the transfer id."""
        params: dict[str, Any] = {
            "amount": payout.amount_cents, "currency": payout.currency,
            "destination": destination,
            "metadata": {"payout": str(payout.id), "consultation": str(payout.consultation_id),
                         "mechanic": str(payout.mechanic_id)},
        }
        if transfer_group:
            params["transfer_group"] = transfer_group
        if source_transaction:
            params["source_transaction"] = source_transaction
        transfer = await self._call(
            f"paying out {payout.amount_cents} cents to mechanic {payout.mechanic_id}",
            self._client.v1.transfers.create_async(
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": f"payout:{payout.id}"}))
        log.info("payout=%s transfer=%s amount=%s destination=%s", payout.id, transfer.id,
                 payout.amount_cents, destination)
        return str(transfer.id)

    # ------------------------------------------------------------------ errors

    async def _call(self, what: str, request: Awaitable[T]) -> T:
        try:
            return await request
        except (stripe.APIConnectionError, stripe.RateLimitError) as exc:
            log.warning("stripe unreachable while %s: %s", what, type(exc).__name__)
            raise ProviderUnavailable(f"Stripe did not answer while {what}; nothing was "
                                      "charged twice, try again in a minute") from exc
        except stripe.APIError as exc:
            log.warning("stripe failed while %s: status=%s request=%s", what,
                        exc.http_status, exc.request_id)
            raise ProviderUnavailable(f"Stripe failed while {what} (HTTP {exc.http_status}); "
                                      "try again in a minute") from exc
        except stripe.AuthenticationError as exc:
            raise ProviderRejected(f"Stripe refused our API key while {what}; check "
                                   "STRIPE_SECRET_KEY") from exc
        except stripe.StripeError as exc:
            message = exc.user_message or str(exc) or type(exc).__name__
            log.warning("stripe refused %s: status=%s code=%s request=%s", what,
                        exc.http_status, exc.code, exc.request_id)
            raise ProviderRejected(f"Stripe refused {what}: {message}", code=exc.code) from exc
