"""Running the face pipeline for the service: the micro-batcher and admission gate, the
threadpool-facing inference facade, and the enrollment quality checks."""
