"""The HTTP routes, one module per concern; ``ROUTERS`` is what ``create_app`` mounts."""

from alignnet.service.http.routes.admin import admin
from alignnet.service.http.routes.inference import inference
from alignnet.service.http.routes.meta import meta

ROUTERS = (inference, meta, admin)
