//! An ARM fake that speaks the wire protocol over real HTTP (issue 4).
