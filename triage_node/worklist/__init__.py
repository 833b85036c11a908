"""The worklist database: models, engine, migrations, state transitions and queries."""
