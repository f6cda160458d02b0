//! Message templates (handlebars, strict mode), compiled at startup.
