"""NotificationService: in-app notifications with a live stream, email, and signed webhooks.

Deliveries go through a transactional outbox drained by a dispatcher in the service
process, so a notification is never lost between "stored" and "sent" and survives restarts.
"""
