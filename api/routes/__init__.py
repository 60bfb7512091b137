"""One router per resource. Handlers validate, (later) authorise, call the queries or services, and shape."""
