//! `portico openapi import`.
