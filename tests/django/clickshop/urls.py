from django.urls import path

from . import views

urlpatterns = [
    path("click/prepare/", views.click_callback),
    path("click/complete/", views.click_callback),
    path("echo/", views.echo),
]
