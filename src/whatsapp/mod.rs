//! WhatsApp: typed Meta Cloud API client (groups, invite links, join requests, messages).
