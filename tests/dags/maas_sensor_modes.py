"""Test-only DAG: the sensor in reschedule mode, run for real by tests/test_sensor.py with dag.test()."""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG

from airflow_provider_maas.sensors.maas import MaaSBatchJobSensor

with DAG("maas_sensor_reschedule", start_date=pendulum.datetime(2026, 1, 1), schedule=None, catchup=False) as dag:
    MaaSBatchJobSensor(task_id="wait", job_name="{{ params.job }}", poll_interval=0.2, mode="reschedule", timeout=60)
