"""One labelling run: preflight, planning, the Prefect flow over Ray, services, the run's summary,
and scheduled runs."""
