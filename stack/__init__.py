"""Running the stack on one machine: a real tritonserver over the generated repository, and the API beside it."""
