//! Route handlers: thin functions over extractors that call the core; [`table`] declares them.

pub mod audit;
pub mod body;
pub mod crypto;
pub mod grants;
pub mod identities;
pub mod keys;
pub mod meta;
pub mod orgs;
pub mod sys;
pub mod table;
