//! `girder agent`: runs on the machine (girder's network-booted ramdisk, then
//! the installed system), reports its inventory, writes images, wipes disks
//! and reports results to its own BareMetalNode.

pub mod disks;
pub mod inventory;
