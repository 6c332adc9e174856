"""Overdue campaigns: one reminder for every open invoice of a tenant that a filter selects.

An operator (or the ERP's collections integration) asks the scheduler's API for e.g. "every invoice
10 to 30 days overdue, over 500 EUR": :mod:`.model` is the request, :mod:`.matching` picks the
invoices from the schedules with the scheduler's own rules, :mod:`.store` keeps the campaign in
MongoDB before anything is sent, :mod:`.runner` publishes its ``reminder.due`` events inside the
tenant's send window and resumes after a crash, :mod:`.api` is the HTTP door. See docs/campaigns.md.
"""
