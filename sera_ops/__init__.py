"""SERA data generation: repositories in, soft-verified SFT trajectories out.

Every stage is a plain function over plain records; Airflow only wires them (see dags/).
"""
