"""Trust click-gateway's verdict on Click callbacks, so this backend needs no Click key.

click-gateway (https://click.uz callbacks verified in front of Django) forwards every callback
whose signature verified with two headers:

    X-Click-Signature-Verified: <service_id>
    X-Click-Gateway-Signature:  t=<unix seconds>,v1=<hex HMAC-SHA256>

The HMAC is keyed with a secret only the gateway and this backend hold, over the bytes
``<t>.<service_id>.<body>`` (the exact body received). This module checks it in constant
time, within a tolerance, and marks the request: ``request.click_gateway_service_id`` is the
``service_id`` (a string) the gateway verified the callback for, or ``None``. A callback view
then skips its own md5 check when the mark matches the request's ``service_id``.

Drop-in, standard library only (hmac, hashlib, time). In settings.py:

    MIDDLEWARE = [..., "click_gateway.ClickGatewayMiddleware"]
    CLICK_GATEWAY_SECRET_FILE = "/etc/click-gateway/trust.secrets"   # the gateway's [trust] file
    # CLICK_GATEWAY_TOLERANCE = 300   # seconds either side of now; default 5 minutes

The secret file has one secret per line (``#`` comments and blank lines skipped), as the
gateway reads it; any of them verifies, so rotating is: add the new secret to this backend's
file, put it first in the gateway's and reload the gateway, then remove the old one from both.
The file is re-read whenever it changes (size, modification time or inode): rotating never
needs a restart of the backend either. ``CLICK_GATEWAY_SECRETS = ["..."]`` may be used instead
of a file.

Or, without the middleware, decorate the callback views: ``@click_gateway_required`` marks
the request the same way and answers Click's ``-1 SIGN CHECK FAILED!`` itself when the
attestation is missing or wrong.
"""

import functools
import hashlib
import hmac
import os
import threading
import time

HEADER = "HTTP_X_CLICK_GATEWAY_SIGNATURE"
DEFAULT_TOLERANCE = 300


class _Secrets:
    """The secrets of a file, re-read when the file changes."""

    def __init__(self):
        self._lock = threading.Lock()
        self._stamp = None
        self._secrets = []

    def get(self, settings):
        inline = getattr(settings, "CLICK_GATEWAY_SECRETS", None)
        if inline:
            return [s.encode("utf-8") for s in inline]
        path = getattr(settings, "CLICK_GATEWAY_SECRET_FILE", None)
        if not path:
            return []
        try:
            st = os.stat(path)
        except OSError:
            return []
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            if stamp != self._stamp:
                with open(path, "rb") as f:
                    lines = f.read().split(b"\n")
                self._secrets = [
                    line.rstrip(b"\r")
                    for line in lines
                    if line.strip() and not line.lstrip().startswith(b"#")
                ]
                self._stamp = stamp
            return list(self._secrets)


_SECRETS = _Secrets()


def verify(header, service_id, body, secrets, now=None, tolerance=DEFAULT_TOLERANCE):
    """True when ``header`` (``t=...,v1=...``) attests ``body`` for ``service_id``.

    Every ``v1`` given is tried against every secret with ``hmac.compare_digest``; ``t`` must be
    within ``tolerance`` seconds of ``now``.
    """
    if not header or not service_id or not secrets:
        return False
    t = None
    signatures = []
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t":
            t = value
        elif key == "v1":
            signatures.append(value.encode("ascii", "replace"))
    if t is None or not t.isdigit() or not signatures:
        return False
    now = time.time() if now is None else now
    if abs(now - int(t)) > tolerance:
        return False
    message = b"%s.%s." % (t.encode("ascii"), service_id.encode("utf-8")) + body
    ok = False
    for secret in secrets:
        expected = hmac.new(secret, message, hashlib.sha256).hexdigest().encode("ascii")
        for given in signatures:
            # No early exit: every comparison runs, each in constant time.
            ok |= hmac.compare_digest(expected, given)
    return ok


def attested_service_id(request):
    """The ``service_id`` the gateway attested for this request, or ``None``."""
    from django.conf import settings

    header = request.META.get(HEADER)
    if not header:
        return None
    service_id = request.META.get("HTTP_X_CLICK_SIGNATURE_VERIFIED")
    try:
        body = request.body
        posted = request.POST.get("service_id")
    except Exception:  # RawPostDataException and friends: no trustworthy body
        return None
    # The gateway names the service it verified; it must be the one the body carries.
    if not service_id or posted != service_id:
        return None
    tolerance = getattr(settings, "CLICK_GATEWAY_TOLERANCE", DEFAULT_TOLERANCE)
    if verify(header, service_id, body, _SECRETS.get(settings), tolerance=tolerance):
        return service_id
    return None


class ClickGatewayMiddleware:
    """Sets ``request.click_gateway_service_id`` on every request (``None`` unless attested)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.click_gateway_service_id = None
        if request.method == "POST" and HEADER in request.META:
            request.click_gateway_service_id = attested_service_id(request)
        return self.get_response(request)


def _sign_check_failed(request):
    from django.http import JsonResponse

    answer = {"error": -1, "error_note": "SIGN CHECK FAILED!"}
    try:
        answer = {
            "click_trans_id": int(request.POST.get("click_trans_id", "")),
            "merchant_trans_id": request.POST.get("merchant_trans_id", ""),
            **answer,
        }
    except Exception:  # no readable form: the bare answer
        pass
    return JsonResponse(answer)


def click_gateway_required(view):
    """Marks the request as the middleware does; answers ``-1`` unless the gateway attested it."""

    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        service_id = getattr(request, "click_gateway_service_id", None)
        if service_id is None:
            service_id = attested_service_id(request)
            request.click_gateway_service_id = service_id
        if service_id is None:
            return _sign_check_failed(request)
        return view(request, *args, **kwargs)

    return wrapper


__all__ = [
    "ClickGatewayMiddleware",
    "attested_service_id",
    "click_gateway_required",
    "verify",
]
