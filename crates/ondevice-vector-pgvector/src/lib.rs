//! The PostgreSQL + pgvector backend (`[vector] backend = "pgvector"`).

#![warn(missing_docs)]
