"""The audit events written about accounts, and which of them give control over one.

Every change to a staff account is one of these events in the hash-chained audit
(`audit.chain.record_audit`), with the account as its object and its username in `data`.
Passwords and their hashes never appear in them.
"""

from __future__ import annotations

CREATED = "user.created"
CHANGED = "user.changed"  # profile fields: names, locale, time zone, attributes, username
EMAIL_CHANGED = "user.email_changed"
SEEDS_CHANGED = "user.seed_addresses_changed"
ROLES_GRANTED = "user.roles_granted"
ROLES_REVOKED = "user.roles_revoked"
STAFF_GRANTED = "user.staff_granted"
STAFF_REVOKED = "user.staff_revoked"
REACTIVATED = "user.reactivated"
DEACTIVATED = "user.deactivated"
SUPERUSER_REVOKED = "user.superuser_revoked"
PASSWORD_SET = "user.password_set"  # by someone other than the owner (or unattributed)
PASSWORD_CHANGED = "user.password_changed"  # by the owner
PASSWORD_DISABLED = "user.password_disabled"
PASSWORD_LINK_SENT = "user.password_link_sent"
GRANT_REQUESTED = "user.grant_requested"
GRANT_CONFIRMED = "user.grant_confirmed"
GRANT_REFUSED = "user.grant_refused"

# What someone did to an account that lets them act as its owner, or put it in a role:
# the approver of a campaign must have done none of these to anyone who authored, edited
# or submitted it (campaigns.permissions reads them back from the chain). Each maps to
# the words the refusal uses. A link sent to the owner's own address is not here: it
# reaches the owner, not the sender; changing that address first is.
CONTROL_ACTIONS: dict[str, str] = {
    CREATED: "created the account of",
    REACTIVATED: "reactivated the account of",
    PASSWORD_SET: "set the password of",
    EMAIL_CHANGED: "changed the address of",
    STAFF_GRANTED: "gave staff access to",
    ROLES_GRANTED: "granted roles to",
    GRANT_REQUESTED: "requested a role for",
    GRANT_CONFIRMED: "confirmed a role for",
}
