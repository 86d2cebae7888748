"""What the provider adds to the Airflow UI: the batch progress plugin (:mod:`.progress`)."""
