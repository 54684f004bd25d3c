"""Report: each run's record, the figures, and the Allure report."""
