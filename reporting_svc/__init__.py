"""ReportingService: generates reports as Temporal workflows and serves them.

``store`` owns the reporting database (reports, components, events, snapshots). The
worker, which is the back half of report generation, writes through the same module.
"""
