"""Store backends behind one protocol (`apollo_es.stores.base.Store`): SQLite and PostgreSQL."""
