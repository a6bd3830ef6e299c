"""Hostile input: one test file per numbered weakness of the security review.

Each test asserts a clear refusal and no change of state, and fails when its defence is
removed. Add a case here whenever a new way in is found.
"""
