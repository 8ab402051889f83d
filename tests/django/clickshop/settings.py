"""A minimal Django project standing in for the payment backend behind click-gateway."""

import os
import sys

# The drop-in module the project ships, imported from where it lives (config/django/).
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "config", "django"))

SECRET_KEY = "test-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["shop.example", "127.0.0.1", "localhost"]
ROOT_URLCONF = "clickshop.urls"
INSTALLED_APPS = []
MIDDLEWARE = ["click_gateway.ClickGatewayMiddleware"]
DATABASES = {}
USE_TZ = True
LOGGING_CONFIG = None

# The gateway's [trust] secret file, when the test shares one with this backend.
CLICK_GATEWAY_SECRET_FILE = os.environ.get("CLICKSHOP_TRUST_FILE")
