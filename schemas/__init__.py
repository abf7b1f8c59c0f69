"""Message models for every slipguard topic; their JSON Schemas live in schemas/json/."""

from schemas.anomaly import Anomaly, AnomalyKind
from schemas.base import Message
from schemas.dlq import DeadLetter
from schemas.late import LateOrder
from schemas.order import Order
from schemas.payment import Payment
from schemas.recovery import Recovery, recovery_id_for

MODELS: dict[str, type[Message]] = {
    "payment": Payment,
    "order": Order,
    "recovery": Recovery,
    "late_order": LateOrder,
    "anomaly": Anomaly,
    "dead_letter": DeadLetter,
}

__all__ = [
    "MODELS", "Anomaly", "AnomalyKind", "DeadLetter", "LateOrder", "Order", "Payment", "Recovery", "recovery_id_for",
]
