"""Local tooling: emulators and a served function for `make run` and the tests.

Not part of the deployed function (the Terraform archive holds main.py, lib/
and requirements.txt only).
"""
