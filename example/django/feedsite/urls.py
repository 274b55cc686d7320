# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""URLs of the feed site."""

from django.urls import path
from feed import views

urlpatterns = [
    path("send", views.send, name="send"),
]
