"""Click SHOP-API endpoints as a typical Django integration writes them.

A callback the gateway attested (click_gateway.ClickGatewayMiddleware set
request.click_gateway_service_id to the request's service_id) is trusted as it is: this backend
then needs no Click key at all. Otherwise the view verifies the signature itself with the key
from the environment, as the backend did before the gateway existed, and also refuses callbacks
that did not pass the gateway (X-Click-Signature-Verified must name the request's service_id).
Every callback that reaches a view is appended as a JSON line to $CLICKSHOP_LOG, so the test can
see what Django received.
"""

import hashlib
import json
import os

from django.http import JsonResponse


def _body(request):
    # Django keeps no raw body once it has streamed a multipart form.
    try:
        return request.body.decode("utf-8")
    except Exception:  # RawPostDataException
        return None


def _record(request, **extra):
    entry = {
        "path": request.path,
        "host": request.get_host(),
        "forwarded_for": request.META.get("HTTP_X_FORWARDED_FOR"),
        "verified_header": request.META.get("HTTP_X_CLICK_SIGNATURE_VERIFIED"),
        "body": _body(request),
        **extra,
    }
    with open(os.environ["CLICKSHOP_LOG"], "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


def click_callback(request):
    p = request.POST
    answer = {
        "click_trans_id": int(p.get("click_trans_id", "0") or 0),
        "merchant_trans_id": p.get("merchant_trans_id", ""),
    }
    action = p.get("action")
    # The few lines a team adds: the gateway's attested verdict replaces the md5 check.
    if getattr(request, "click_gateway_service_id", None) == p.get("service_id"):
        _record(request, verdict="attested")
        return _success(answer, action)
    if request.META.get("HTTP_X_CLICK_SIGNATURE_VERIFIED") != p.get("service_id"):
        _record(request, verdict="not through the gateway")
        return JsonResponse({**answer, "error": -1, "error_note": "SIGN CHECK FAILED!"})
    key = os.environ.get("CLICK_SERVICE_%s_SECRET_KEY" % p.get("service_id"), "")
    if not key:
        _record(request, verdict="no key, not attested")
        return JsonResponse({**answer, "error": -1, "error_note": "SIGN CHECK FAILED!"})
    parts = [p["click_trans_id"], p["service_id"], key, p["merchant_trans_id"]]
    if action == "1":
        parts.append(p["merchant_prepare_id"])
    parts += [p["amount"], action, p["sign_time"]]
    digest = hashlib.md5("".join(parts).encode("utf-8")).hexdigest()
    if digest != p["sign_string"].lower():
        _record(request, verdict="bad signature")
        return JsonResponse({**answer, "error": -1, "error_note": "SIGN CHECK FAILED!"})
    _record(request, verdict="ok")
    return _success(answer, action)


def _success(answer, action):
    if action == "0":
        return JsonResponse({**answer, "merchant_prepare_id": 5001, "error": 0, "error_note": "Success"})
    return JsonResponse({**answer, "merchant_confirm_id": 7001, "error": 0, "error_note": "Success"})


def echo(request):
    return JsonResponse(
        {
            "method": request.method,
            "host": request.get_host(),
            "query": request.GET.dict(),
            "forwarded_for": request.META.get("HTTP_X_FORWARDED_FOR"),
            "forwarded_proto": request.META.get("HTTP_X_FORWARDED_PROTO"),
            "verified_header": request.META.get("HTTP_X_CLICK_SIGNATURE_VERIFIED"),
            "body_length": len(request.body),
        }
    )
