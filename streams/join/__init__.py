"""The payment-order join.

core.py (the rules, pure) and state.py (what they remember, and what the changelog must
be told); changelog.py (the state's records); merge.py (a pair's two partitions in
event-time order); intake.py (what is accepted); outputs.py (what is produced);
checkpoint.py (the commit: transaction, changelog, offsets); restore.py (state back
from the changelog); worker.py (the loop that wires them).
"""


class JoinFailed(Exception):
    """The worker cannot go on (another worker with its instance id, a broken topic layout,
    a fatal client error): it exits with one line saying why."""


class InstanceHeld(JoinFailed):
    """The group coordinator refuses this worker's group.instance.id: another member holds
    it, a killed predecessor until its session expires, or a live duplicate."""


class ProtocolRefused(JoinFailed):
    """The broker does not offer the KIP-848 consumer group protocol (Kafka before 4.0, or
    group.coordinator.rebalance.protocols without `consumer`)."""


class Denied(JoinFailed):
    """The broker's authorizer refused this principal: `resource` (TOPIC, GROUP,
    TRANSACTIONAL_ID) named `name`, or the group's / transactional id's own when None."""

    def __init__(self, resource: str, name: str | None, detail: str) -> None:
        super().__init__(f"not authorized: {resource} {name or ''} ({detail})")
        self.resource, self.name = resource, name
