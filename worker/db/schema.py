"""The whole schema: the core tables (models) plus the per-credential tables (credentials), the
scan progress tables (watermarks), the API tokens (tokens), the hooks bbsync made (hooks), the
OAuth authorizations under way (oauth) and the built-in helpdesk's tables (helpdesk). Import
this (not models alone) wherever the complete metadata matters: Alembic, create_all."""
from worker.db.credentials import ApiBudget, Credential  # noqa: F401
from worker.db.hooks import ConnectionHook  # noqa: F401
from worker.db.helpdesk import Ticket, TicketAttachment, TicketComment  # noqa: F401
from worker.db.models import Base
from worker.db.oauth import OAuthAuthorization  # noqa: F401
from worker.db.tokens import ApiToken, ApiTokenConnection  # noqa: F401
from worker.db.watermarks import BackfillCursor, ReconcileWatermark  # noqa: F401

metadata = Base.metadata
