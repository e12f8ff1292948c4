//! The address other nodes dial for this node: `--advertise-address`, else
//! the `--host` it binds when that is one address, else (a wildcard bind,
//! `0.0.0.0` or `::`) the address of the interface that routes to the head.
//! Never a wildcard: a node advertised as `0.0.0.0` makes every other node
//! dial itself.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};

use anyhow::{Context, bail};

/// Where packets to an address outside any local network would leave from:
/// a documentation address (RFC 5737), never sent to, only looked up in the
/// routing table.
const OUTSIDE: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)), 9);

/// The host to advertise for a node bound to `bind_host`; `head` is the head
/// a raylet joins (`None` on the head's own node).
pub fn advertised_host(
    flag: Option<&str>,
    bind_host: &str,
    head: Option<&str>,
) -> anyhow::Result<String> {
    if let Some(given) = flag {
        if given.is_empty() || given.parse::<IpAddr>().is_ok_and(|ip| ip.is_unspecified()) {
            bail!(
                "--advertise-address {given:?} is not an address other nodes can dial: give this node's IP or DNS name"
            );
        }
        return Ok(given.to_string());
    }
    let bound: IpAddr = bind_host
        .parse()
        .with_context(|| format!("--host {bind_host:?} is not an IP address"))?;
    if !bound.is_unspecified() {
        return Ok(bind_host.to_string());
    }
    let routed = match head {
        Some(head) => source_address_towards(head)?,
        None => source_address_for(OUTSIDE).or_else(first_interface_address),
    };
    routed.map(|ip| ip.to_string()).with_context(|| {
        format!(
            "--host {bind_host} listens on every interface, and no single address of this node could be found to advertise: pass --advertise-address"
        )
    })
}

/// The local address packets to `head` (HOST:PORT) leave from.
fn source_address_towards(head: &str) -> anyhow::Result<Option<IpAddr>> {
    let target = head
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve the head address {head:?}"))?
        .next()
        .with_context(|| format!("the head address {head:?} resolves to nothing"))?;
    Ok(source_address_for(target))
}

/// Asks the kernel's routing table, through an unconnected UDP socket's
/// `connect` (which sends nothing).
fn source_address_for(target: SocketAddr) -> Option<IpAddr> {
    let any: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let socket = UdpSocket::bind(any).ok()?;
    socket.connect(target).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

/// The first IPv4 address of an interface that is up and not loopback (a
/// host without a default route, e.g. on an isolated network).
fn first_interface_address() -> Option<IpAddr> {
    use nix::net::if_::InterfaceFlags;
    nix::ifaddrs::getifaddrs()
        .ok()?
        .filter(|i| {
            i.flags.contains(InterfaceFlags::IFF_UP)
                && !i.flags.contains(InterfaceFlags::IFF_LOOPBACK)
        })
        .find_map(|i| Some(IpAddr::V4(i.address?.as_sockaddr_in()?.ip())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_bound_address_is_advertised_as_it_is() {
        assert_eq!(
            advertised_host(None, "127.0.0.1", None).unwrap(),
            "127.0.0.1"
        );
        assert_eq!(
            advertised_host(Some("node-7.example"), "0.0.0.0", None).unwrap(),
            "node-7.example"
        );
    }

    #[test]
    fn a_wildcard_is_replaced_by_the_address_that_routes_to_the_head() {
        assert_eq!(
            advertised_host(None, "0.0.0.0", Some("127.0.0.1:6380")).unwrap(),
            "127.0.0.1"
        );
    }

    #[test]
    fn a_wildcard_advertise_address_is_refused() {
        let err = advertised_host(Some("0.0.0.0"), "0.0.0.0", None).unwrap_err();
        assert!(
            err.to_string()
                .contains("not an address other nodes can dial"),
            "{err}"
        );
    }
}
