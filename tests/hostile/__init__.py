"""One test file per numbered weakness of the security review; each asserts a clear refusal and no change of state."""
