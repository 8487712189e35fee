"""The SurveyMesh worker: report workflows and their activities, on Temporal.

``python -m worker`` runs one process polling the queues named by
``SURVEYMESH_WORKER_QUEUES`` (all of them by default); see :mod:`worker.worker`.
"""
