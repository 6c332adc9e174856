"""Scheduler: remembers each invoice's due date, payments and render outcome; announces reminder.due.

This is the first step of the reminder plan: one ``overdue`` reminder per unpaid invoice past
its due date. Handlers only record state (one MongoDB document per tenant/invoice, whatever order
the events arrive in); a periodic sweep decides, so a clock is the only input the decision needs
(and tests inject one). The decisions are pure functions in :mod:`factura.scheduler.decisions`.

* ``invoice.created`` records the invoice (a corrected version replaces the summary).
* ``payment.received`` records the payment. A payment in another currency than the invoice's is
  refused: it never counts toward "paid", and ``payment.unmatched`` (reason
  ``currency_mismatch``) records why, for audit. A payment recorded before its invoice arrived
  is judged when the invoice arrives; either way the event has one deterministic id.
* ``invoice.rejected`` at stage ``render`` marks that invoice version as never sent: no
  reminder goes out for it (a corrected version that renders is reminded as usual). Ingest
  rejections never became an invoice and are ignored.
* **One sweeper.** Every replica consumes (Kafka shares the partitions), but only the holder of
  the ``reminder-sweep`` lease in MongoDB (:mod:`factura.scheduler.lease`) sweeps. Each tick
  renews it; a clean stop releases it; if the holder dies, another replica takes it after
  ``lease_seconds`` (default 3 ticks). Reminder ids are deterministic, so even the narrow window
  of a paused holder yields a duplicate event that consumers ignore, not a second reminder.

faust-streaming was considered and left out: every service shares one consumer loop with
explicit commits and DLQ semantics, and the sweep is a plain query over MongoDB state.
"""
