"""DeliveryService: surveys, their questions and the responses collected for them.

Run it with ``python -m delivery_svc``; embed it (tests, ``surveymesh up``) with
:func:`delivery_svc.server.create_server`.
"""
