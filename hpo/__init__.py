"""The sweep orchestrator: sweep files, Ray Tune + Optuna dispatch, the study and its exports."""
