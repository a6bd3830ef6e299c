"""The one-recipient guard: every layer that refuses a message not addressed to exactly one person.

In 2019 a sender batched 1,000 addresses per provider call and the provider turned each
batch into one message with a shared `To:` line. The template was fine; the transport
payload was not. So the rule is checked on every representation a message takes on its
way out, each by its own named function, and each alone would have stopped that leak:

- `message`: the message's own fields, extra headers and serialized bytes
  (`require_single_recipient`), header line breaks (`require_clean_headers`), anymail
  merge attributes (`require_no_merge`), and other users' addresses in the subject or
  bodies (`require_no_foreign_addresses`).
- `provider`: the anymail payload after SEND_DEFAULTS are merged
  (`require_single_recipient_anymail_payload`), and after the send the provider's own
  view of the recipients (`require_provider_recipients`).
- `envelope`: the SMTP RCPT TO list and the serialized headers (`require_single_smtp_envelope`).
- `mail_settings`: anymail settings that add recipients or batch (also a system check).

Below them, `vocabulary` names what a recipient field is and `addresses` reads addresses
as every parser on the way out does. `layers` lists which layers run (tests narrow it)
and runs them; `campaigns.backends.GuardedBackend` calls it for every message.
"""
