"""A minimal Django project standing in for the payment backend behind click-gateway."""

SECRET_KEY = "test-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["shop.example", "127.0.0.1", "localhost"]
ROOT_URLCONF = "clickshop.urls"
INSTALLED_APPS = []
MIDDLEWARE = []
DATABASES = {}
USE_TZ = True
LOGGING_CONFIG = None
