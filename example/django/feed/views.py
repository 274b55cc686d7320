# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""The feed's view: send a message through this worker's engine."""

from __future__ import annotations

import os

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from feed import engine as feed
from wsengine import ConnectionClosedError, EngineStateError


@csrf_exempt
@require_POST
def send(request: HttpRequest) -> JsonResponse:
    """``POST /send`` with form field ``text``: send it to the feed as a TEXT message.

    Answers ``{"sent": text, "pid": worker pid}``, 400 without ``text``, and 503 when this
    worker's engine has no open connection (reconnecting, never started, or started in the
    master before the fork), with the engine's explanation.
    """
    text = request.POST.get("text")
    if not text:
        return JsonResponse({"error": "the form field 'text' is required"}, status=400)
    try:
        feed.get().send(text)
    except (EngineStateError, ConnectionClosedError) as error:
        return JsonResponse({"error": str(error)}, status=503)
    return JsonResponse({"sent": text, "pid": os.getpid()})
