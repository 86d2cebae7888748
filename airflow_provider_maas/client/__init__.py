"""The service client: everything that knows the MaaS batch API's HTTP surface, owned by
:class:`~airflow_provider_maas.hooks.maas.MaaSHook`.

``config`` (base URL, names, TLS, timeouts), ``retry`` (the one retry policy, sync and async),
``errors`` (error answers to exceptions, redacted by the package's
:mod:`~airflow_provider_maas.redaction`), ``transport`` (sessions and calls, ``requests``
and ``aiohttp``; imported lazily), ``streams`` and ``integrity`` (what is sent and received, checked),
``failures`` (transport errors, the rules of job creation), ``states`` (a job's state to an outcome),
``naming`` (the names of uploaded files and jobs). Nothing here imports Airflow task code.
"""
