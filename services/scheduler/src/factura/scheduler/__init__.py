"""Scheduler: remembers each invoice's due date and payments; announces reminder.due when overdue.

This is the first step of the reminder plan: one ``overdue`` reminder per unpaid invoice past
its due date. Handlers only write state; a periodic sweep decides, so a clock is the only input
the decision needs (and tests inject one).

faust-streaming was considered and left out: every service shares one consumer loop with
explicit commits and DLQ semantics, and the sweep is a plain query over MongoDB state.
"""
