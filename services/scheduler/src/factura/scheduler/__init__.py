"""Scheduler: runs each tenant's reminder plan for every open invoice until it is paid.

Handlers record what happens to an invoice (one MongoDB document per tenant/invoice, whatever
order the events arrive in) and move its timer: the next occurrence of the plan (a step before,
on or after the due date, a repeat, an escalation call, the helpdesk ticket) and when it is due.
A periodic sweep publishes what is due; the plan's calendar is pure
(:mod:`factura.common.reminders`) and so are the decisions (:mod:`factura.scheduler.decisions`),
so a clock is the only other input (and tests inject one). See docs/scheduler.md.

* ``invoice.created`` starts the plan (a late invoice at its most recent past occurrence);
  ``invoice.rendered`` records the document reminders link to.
* ``payment.received``: paid in full closes the plan at once (and sends ``receipt.due`` when the
  plan asks); a partial payment lowers what later reminders ask for and may re-anchor the plan;
  payments that match nothing owed are ``payment.unmatched`` with the reason.
* ``invoice.cancelled`` and a rejection at ``render`` close the plan.
* ``ticket.due`` is posted to the tenant's helpdesk (:mod:`factura.scheduler.tickets`).
* **One sweeper.** Every replica consumes (Kafka shares the partitions), but only the holder of
  the ``reminder-sweep`` lease in MongoDB (:mod:`factura.common.lease`) sweeps. Each tick
  renews it; a clean stop releases it; if the holder dies, another replica takes it after
  ``lease_seconds`` (default 3 ticks). Event ids are deterministic, so even a paused holder
  yields a duplicate event that consumers ignore, not a second reminder.

faust-streaming tables were considered and left out: see docs/scheduler.md, "How it runs".
"""
