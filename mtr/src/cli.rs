//! TODO
#![allow(dead_code)]
