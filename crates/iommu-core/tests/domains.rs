//! Domains, default domains, the sysfs `type` file, attach/detach and DMA ownership.

mod common;

use common::{snapshot, world, world_with};
use iommu_core::testing::{MockConfig, MockIommu, MockOp};
use iommu_core::{Bus, DmaOwner, DomainType, Errno, Iommu, IommuConfig};
use std::collections::HashMap;

fn votes(pairs: &[(&str, DomainType)]) -> HashMap<String, DomainType> {
    pairs.iter().map(|(n, t)| (n.to_string(), *t)).collect()
}

#[test]
fn domain_type_flags_match_linux() {
    use DomainType::*;
    assert_eq!(
        [Blocked, Identity, Unmanaged, Dma, DmaFq].map(|t| t.flags()),
        [0, 0b100, 0b1, 0b11, 0b1011]
    );
    assert!(Unmanaged.is_paging() && !Unmanaged.is_dma_api());
    assert!(DmaFq.uses_flush_queue() && !Dma.uses_flush_queue());
    assert!(!Identity.is_paging() && !Blocked.is_paging());
}

#[test]
fn domain_alloc_on_a_bus_without_ops_is_enodev() {
    let iommu = Iommu::default();
    let bus = Bus::new(&iommu, "platform").unwrap();
    assert_eq!(
        iommu.domain_alloc(&bus, DomainType::Unmanaged).unwrap_err(),
        Errno::ENODEV
    );
}

#[test]
fn domain_alloc_returns_the_driver_refusal() {
    let cfg = MockConfig {
        identity: false,
        ..MockConfig::default()
    };
    let w = world_with(IommuConfig::default(), cfg, &[]);
    assert_eq!(
        w.iommu
            .domain_alloc(&w.bus, DomainType::Identity)
            .unwrap_err(),
        Errno::EOPNOTSUPP
    );
    w.mock.fail_after(MockOp::DomainAlloc, 0);
    assert_eq!(
        w.iommu
            .domain_alloc(&w.bus, DomainType::Unmanaged)
            .unwrap_err(),
        Errno::ENOMEM
    );
}

#[test]
fn domain_alloc_fills_type_pgsizes_and_aperture() {
    let w = world(&[]);
    let d = w.iommu.domain_alloc(&w.bus, DomainType::Unmanaged).unwrap();
    assert_eq!(d.ty(), DomainType::Unmanaged);
    assert_eq!(d.pgsize_bitmap(), 0x1000 | 0x20_0000 | 0x4000_0000);
    assert_eq!(d.geometry().aperture_end.raw(), (1 << 48) - 1);
    assert!(d.geometry().force_aperture);
    assert_eq!(d.driver(), "mock-iommu");
}

#[test]
fn default_domain_follows_the_subsystem_policy() {
    for (config, expect) in [
        (
            IommuConfig {
                passthrough: false,
                strict: true,
            },
            "DMA\n",
        ),
        (
            IommuConfig {
                passthrough: false,
                strict: false,
            },
            "DMA-FQ\n",
        ),
        (
            IommuConfig {
                passthrough: true,
                strict: true,
            },
            "identity\n",
        ),
    ] {
        let w = world_with(config, MockConfig::default(), &[("a", &[1])]);
        assert_eq!(
            w.iommu.sysfs().read("kernel/iommu_groups/0/type").unwrap(),
            expect,
            "{config:?}"
        );
        let g = w.group_of(0);
        assert_eq!(
            g.domain(),
            g.default_domain(),
            "the group starts on its default domain"
        );
        assert_eq!(w.mock.attached_domain("a"), g.domain().map(|d| d.id()));
    }
}

#[test]
fn default_domain_follows_the_driver_vote() {
    let cfg = MockConfig {
        votes: votes(&[("gpu", DomainType::Identity)]),
        ..MockConfig::default()
    };
    let w = world_with(IommuConfig::default(), cfg, &[("gpu", &[1]), ("nic", &[2])]);
    assert_eq!(w.group_of(0).type_string(), "identity\n");
    assert_eq!(w.group_of(1).type_string(), "DMA\n");
}

#[test]
fn lazy_policy_without_deferred_flush_gives_dma() {
    let cfg = MockConfig {
        deferred_flush: false,
        ..MockConfig::default()
    };
    let w = world_with(
        IommuConfig {
            passthrough: false,
            strict: false,
        },
        cfg,
        &[("a", &[1])],
    );
    assert_eq!(w.group_of(0).type_string(), "DMA\n");
}

#[test]
fn default_domain_falls_back_to_dma() {
    let cfg = MockConfig {
        identity: false,
        ..MockConfig::default()
    };
    let w = world_with(
        IommuConfig {
            passthrough: true,
            strict: true,
        },
        cfg,
        &[("a", &[1])],
    );
    assert_eq!(w.group_of(0).type_string(), "DMA\n");
    assert!(w
        .iommu
        .log_lines()
        .iter()
        .any(|l| l.contains("falling back to DMA")));
}

#[test]
fn group_without_any_default_domain_reads_unknown() {
    // Passthrough is asked for, identity is refused, and the DMA fallback fails too.
    let cfg = MockConfig {
        identity: false,
        ..MockConfig::default()
    };
    let w = world_with(
        IommuConfig {
            passthrough: true,
            strict: true,
        },
        cfg,
        &[],
    );
    w.mock.fail_after(MockOp::DomainAlloc, 1);
    let d = w
        .bus
        .add_device(iommu_core::DeviceBuilder::new("x").stream_ids([5]))
        .unwrap();
    let g = d.iommu_group().unwrap();
    assert!(g.default_domain().is_none());
    assert_eq!(g.domain(), None);
    assert_eq!(g.type_string(), "unknown\n");
    assert_eq!(
        w.iommu
            .sysfs()
            .write("kernel/iommu_groups/0/type", "DMA")
            .unwrap_err(),
        Errno::EINVAL
    );
}

#[test]
fn writing_type_switches_the_default_domain() {
    let w = world(&[("a", &[1])]);
    let g = w.group_of(0);
    let old = g.default_domain().unwrap();
    let sysfs = w.iommu.sysfs();
    assert_eq!(
        sysfs.write("kernel/iommu_groups/0/type", "identity\n"),
        Ok(9)
    );
    assert_eq!(
        sysfs.read("kernel/iommu_groups/0/type").unwrap(),
        "identity\n"
    );
    let new = g.default_domain().unwrap();
    assert_ne!(new, old);
    assert_eq!(g.domain(), Some(new.clone()));
    assert_eq!(w.mock.attached_domain("a"), Some(new.id()));
    assert_eq!(sysfs.write("kernel/iommu_groups/0/type", "auto"), Ok(4));
    assert_eq!(sysfs.read("kernel/iommu_groups/0/type").unwrap(), "DMA\n");
}

#[test]
fn writing_dma_fq_over_dma_converts_in_place() {
    let w = world(&[("a", &[1])]);
    let g = w.group_of(0);
    let d = g.default_domain().unwrap();
    // Allowed even while owned: no domain is torn down.
    w.iommu.device_use_default_domain(&w.devs[0]).unwrap();
    assert_eq!(
        w.iommu
            .sysfs()
            .write("kernel/iommu_groups/0/type", "DMA-FQ"),
        Ok(6)
    );
    assert_eq!(g.default_domain(), Some(d.clone()));
    assert_eq!(d.ty(), DomainType::DmaFq);
}

#[test]
fn writing_type_rejects_other_words_with_einval() {
    let w = world(&[("a", &[1])]);
    let before = snapshot(&w);
    for bad in ["blocked", "unmanaged", "dma", "DMA \n", "", "identity\n\n"] {
        assert_eq!(
            w.iommu
                .sysfs()
                .write("kernel/iommu_groups/0/type", bad)
                .unwrap_err(),
            Errno::EINVAL,
            "{bad:?}"
        );
    }
    assert_eq!(snapshot(&w), before);
}

#[test]
fn writing_type_while_owned_is_eperm() {
    let w = world(&[("a", &[1])]);
    w.iommu.device_use_default_domain(&w.devs[0]).unwrap();
    assert_eq!(
        w.iommu
            .sysfs()
            .write("kernel/iommu_groups/0/type", "identity")
            .unwrap_err(),
        Errno::EPERM
    );
    w.iommu.device_unuse_default_domain(&w.devs[0]);
    let owner = DmaOwner::new();
    w.iommu.device_claim_dma_owner(&w.devs[0], owner).unwrap();
    assert_eq!(
        w.iommu
            .sysfs()
            .write("kernel/iommu_groups/0/type", "identity")
            .unwrap_err(),
        Errno::EPERM
    );
}

#[test]
fn writing_type_of_an_empty_group_is_eperm() {
    let w = world(&[("a", &[1])]);
    let g = w.group_of(0);
    g.remove_device(&w.devs[0]);
    assert!(g.default_domain().is_some());
    assert_eq!(
        w.iommu.group_store_type(&g, "identity").unwrap_err(),
        Errno::EPERM
    );
}

#[test]
fn writing_type_off_the_default_domain_is_ebusy() {
    let w = world(&[("a", &[1])]);
    let d = w.iommu.domain_alloc(&w.bus, DomainType::Unmanaged).unwrap();
    w.iommu.attach_group(&d, &w.group_of(0)).unwrap();
    assert_eq!(
        w.iommu
            .sysfs()
            .write("kernel/iommu_groups/0/type", "identity")
            .unwrap_err(),
        Errno::EBUSY
    );
}

#[test]
fn writing_a_type_the_driver_forbids_is_einval() {
    let cfg = MockConfig {
        votes: votes(&[("a", DomainType::Dma)]),
        ..MockConfig::default()
    };
    let w = world_with(IommuConfig::default(), cfg, &[("a", &[1])]);
    assert_eq!(
        w.iommu
            .sysfs()
            .write("kernel/iommu_groups/0/type", "identity")
            .unwrap_err(),
        Errno::EINVAL
    );
    assert_eq!(w.group_of(0).type_string(), "DMA\n");
}

#[test]
fn writing_type_that_fails_to_attach_keeps_the_old_domain() {
    let w = world(&[("a", &[1]), ("b", &[1])]);
    let before = snapshot(&w);
    w.mock.fail_after(MockOp::Attach, 1); // second device refuses
    assert_eq!(
        w.iommu
            .sysfs()
            .write("kernel/iommu_groups/0/type", "identity")
            .unwrap_err(),
        Errno::EINVAL
    );
    assert_eq!(snapshot(&w), before);
    let g = w.group_of(0);
    assert_eq!(
        w.mock.attached_domain("a"),
        g.domain().map(|d| d.id()),
        "rolled back"
    );
}

#[test]
fn attach_group_while_on_a_non_default_domain_is_ebusy() {
    let w = world(&[("a", &[1])]);
    let g = w.group_of(0);
    let d1 = w.iommu.domain_alloc(&w.bus, DomainType::Unmanaged).unwrap();
    let d2 = w.iommu.domain_alloc(&w.bus, DomainType::Unmanaged).unwrap();
    w.iommu.attach_group(&d1, &g).unwrap();
    assert_eq!(w.iommu.attach_group(&d2, &g).unwrap_err(), Errno::EBUSY);
    assert_eq!(
        w.iommu.attach_group(&d1, &g).unwrap_err(),
        Errno::EBUSY,
        "even the same domain"
    );
    assert_eq!(g.domain(), Some(d1));
}

#[test]
fn attach_group_rolls_back_when_a_device_refuses() {
    let w = world(&[("a", &[1]), ("b", &[1]), ("c", &[1])]);
    let g = w.group_of(0);
    let def = g.default_domain().unwrap();
    let d = w.iommu.domain_alloc(&w.bus, DomainType::Unmanaged).unwrap();
    w.mock.fail_after(MockOp::Attach, 2);
    assert_eq!(w.iommu.attach_group(&d, &g).unwrap_err(), Errno::EINVAL);
    assert_eq!(g.domain(), Some(def.clone()));
    for n in ["a", "b", "c"] {
        assert_eq!(
            w.mock.attached_domain(n),
            Some(def.id()),
            "{n} back on the default domain"
        );
    }
    w.iommu.attach_group(&d, &g).unwrap();
    for n in ["a", "b", "c"] {
        assert_eq!(w.mock.attached_domain(n), Some(d.id()));
    }
}

#[test]
fn detach_group_reattaches_the_default_domain() {
    let w = world(&[("a", &[1])]);
    let g = w.group_of(0);
    let d = w.iommu.domain_alloc(&w.bus, DomainType::Unmanaged).unwrap();
    w.iommu.attach_group(&d, &g).unwrap();
    w.iommu.detach_group(&d, &g);
    assert_eq!(g.domain(), g.default_domain());
    assert_eq!(
        w.mock.attached_domain("a"),
        g.default_domain().map(|d| d.id())
    );
}

#[test]
fn detach_group_without_a_default_domain_detaches_every_device() {
    let w = world(&[]);
    let g = w.iommu.group_alloc().unwrap();
    let a = w
        .bus
        .add_device(iommu_core::DeviceBuilder::new("a"))
        .unwrap();
    let b = w
        .bus
        .add_device(iommu_core::DeviceBuilder::new("b"))
        .unwrap();
    g.add_device(&a).unwrap();
    g.add_device(&b).unwrap();
    let d = w.iommu.domain_alloc(&w.bus, DomainType::Unmanaged).unwrap();
    w.iommu.attach_group(&d, &g).unwrap();
    assert_eq!(w.mock.attached_domain("b"), Some(d.id()));
    w.iommu.detach_group(&d, &g);
    assert_eq!(g.domain(), None);
    assert_eq!(
        (w.mock.attached_domain("a"), w.mock.attached_domain("b")),
        (None, None)
    );
}

#[test]
fn detach_group_on_its_default_domain_changes_nothing() {
    let w = world(&[("a", &[1])]);
    let g = w.group_of(0);
    let d = w.iommu.domain_alloc(&w.bus, DomainType::Unmanaged).unwrap();
    let before = snapshot(&w);
    w.iommu.detach_group(&d, &g);
    assert_eq!(snapshot(&w), before);
}

#[test]
fn detach_group_ignores_the_domain_named_and_returns_to_the_core_domain() {
    // Linux's iommu_detach_group does not look at its domain argument.
    let w = world(&[("a", &[1])]);
    let g = w.group_of(0);
    let on = w.iommu.domain_alloc(&w.bus, DomainType::Unmanaged).unwrap();
    let other = w.iommu.domain_alloc(&w.bus, DomainType::Unmanaged).unwrap();
    w.iommu.attach_group(&on, &g).unwrap();
    w.iommu.detach_group(&other, &g);
    assert_eq!(g.domain(), g.default_domain());
    assert_eq!(
        w.mock.attached_domain("a"),
        g.default_domain().map(|d| d.id())
    );
}

#[test]
fn attach_device_without_a_group_is_enodev() {
    let w = world(&[("plain", &[])]);
    let d = w.iommu.domain_alloc(&w.bus, DomainType::Unmanaged).unwrap();
    assert_eq!(
        w.iommu.attach_device(&d, &w.devs[0]).unwrap_err(),
        Errno::ENODEV
    );
    assert_eq!(w.mock.attached_domain("plain"), None);
    w.iommu.detach_device(&d, &w.devs[0]); // a no-op
    assert_eq!(w.mock.attached_domain("plain"), None);
}

#[test]
fn detach_device_from_a_domain_it_is_not_on_changes_nothing_and_warns() {
    let w = world(&[("a", &[1])]);
    let g = w.group_of(0);
    let on = w.iommu.domain_alloc(&w.bus, DomainType::Unmanaged).unwrap();
    let other = w.iommu.domain_alloc(&w.bus, DomainType::Unmanaged).unwrap();
    w.iommu.attach_device(&on, &w.devs[0]).unwrap();
    w.iommu.detach_device(&other, &w.devs[0]);
    assert_eq!(g.domain(), Some(on.clone()));
    assert!(w
        .iommu
        .log_lines()
        .iter()
        .any(|l| l.starts_with("WARNING: a: detach_device")));
    w.iommu.detach_device(&on, &w.devs[0]);
    assert_eq!(g.domain(), g.default_domain());
}

#[test]
fn attach_device_in_a_shared_group_is_einval() {
    let w = world(&[("a", &[1]), ("b", &[1])]);
    let d = w.iommu.domain_alloc(&w.bus, DomainType::Unmanaged).unwrap();
    assert_eq!(
        w.iommu.attach_device(&d, &w.devs[0]).unwrap_err(),
        Errno::EINVAL
    );
}

#[test]
fn detach_device_in_a_shared_group_warns_and_changes_nothing() {
    let w = world(&[("a", &[1]), ("b", &[1])]);
    let g = w.group_of(0);
    let d = w.iommu.domain_alloc(&w.bus, DomainType::Unmanaged).unwrap();
    w.iommu.attach_group(&d, &g).unwrap();
    w.iommu.detach_device(&d, &w.devs[0]);
    assert_eq!(g.domain(), Some(d));
    assert!(w
        .iommu
        .log_lines()
        .iter()
        .any(|l| l.starts_with("WARNING: a: detach_device")));
}

#[test]
fn attach_and_detach_single_device_use_the_group_rules() {
    let w = world(&[("a", &[1])]);
    let g = w.group_of(0);
    let d = w.iommu.domain_alloc(&w.bus, DomainType::Unmanaged).unwrap();
    w.iommu.attach_device(&d, &w.devs[0]).unwrap();
    assert_eq!(g.domain(), Some(d.clone()));
    w.iommu.detach_device(&d, &w.devs[0]);
    assert_eq!(g.domain(), g.default_domain());
}

#[test]
fn claiming_dma_ownership_moves_the_group_to_a_blocking_domain() {
    let w = world(&[("a", &[1])]);
    let g = w.group_of(0);
    let owner = DmaOwner::new();
    w.iommu.group_claim_dma_owner(&g, owner).unwrap();
    let blocking = g.domain().unwrap();
    assert_eq!(blocking.ty(), DomainType::Blocked);
    assert_eq!(g.dma_owner(), Some(owner));
    assert_eq!(w.mock.attached_domain("a"), Some(blocking.id()));
    // The owner may attach its own domain and detach back to blocking.
    let user = w.iommu.domain_alloc(&w.bus, DomainType::Unmanaged).unwrap();
    w.iommu.attach_group(&user, &g).unwrap();
    w.iommu.detach_group(&user, &g);
    assert_eq!(g.domain(), Some(blocking));
    w.iommu.group_release_dma_owner(&g);
    assert_eq!(g.domain(), g.default_domain());
    assert_eq!(g.dma_owner(), None);
    assert_eq!(g.dma_owner_count(), 0);
}

#[test]
fn a_driver_without_blocking_domains_gets_an_empty_unmanaged_one() {
    let cfg = MockConfig {
        blocked: false,
        ..MockConfig::default()
    };
    let w = world_with(IommuConfig::default(), cfg, &[("a", &[1])]);
    let g = w.group_of(0);
    w.iommu.group_claim_dma_owner(&g, DmaOwner::new()).unwrap();
    let d = g.domain().unwrap();
    assert_eq!(d.ty(), DomainType::Unmanaged);
    assert!(MockIommu::mappings(&d).is_empty());
}

#[test]
fn claiming_an_owned_group_is_eperm() {
    let w = world(&[("a", &[1])]);
    let g = w.group_of(0);
    let (o1, o2) = (DmaOwner::new(), DmaOwner::new());
    w.iommu.group_claim_dma_owner(&g, o1).unwrap();
    assert_eq!(
        w.iommu.group_claim_dma_owner(&g, o1).unwrap_err(),
        Errno::EPERM
    );
    assert_eq!(
        w.iommu.device_claim_dma_owner(&w.devs[0], o2).unwrap_err(),
        Errno::EPERM
    );
    // The same owner may claim through the device again; claims are counted.
    w.iommu.device_claim_dma_owner(&w.devs[0], o1).unwrap();
    assert_eq!(g.dma_owner_count(), 2);
    w.iommu.device_release_dma_owner(&w.devs[0]);
    assert_eq!(g.dma_owner(), Some(o1));
    w.iommu.device_release_dma_owner(&w.devs[0]);
    assert_eq!(g.dma_owner(), None);
    assert_eq!(g.domain(), g.default_domain());
}

#[test]
fn claiming_a_group_off_its_default_domain_is_ebusy() {
    let w = world(&[("a", &[1])]);
    let g = w.group_of(0);
    let d = w.iommu.domain_alloc(&w.bus, DomainType::Unmanaged).unwrap();
    w.iommu.attach_group(&d, &g).unwrap();
    assert_eq!(
        w.iommu
            .group_claim_dma_owner(&g, DmaOwner::new())
            .unwrap_err(),
        Errno::EBUSY
    );
    assert_eq!(g.dma_owner(), None);
}

#[test]
fn kernel_driver_use_blocks_user_ownership_and_vice_versa() {
    let w = world(&[("a", &[1])]);
    w.iommu.device_use_default_domain(&w.devs[0]).unwrap();
    assert_eq!(
        w.iommu
            .device_claim_dma_owner(&w.devs[0], DmaOwner::new())
            .unwrap_err(),
        Errno::EPERM
    );
    w.iommu.device_unuse_default_domain(&w.devs[0]);
    w.iommu
        .device_claim_dma_owner(&w.devs[0], DmaOwner::new())
        .unwrap();
    assert_eq!(
        w.iommu.device_use_default_domain(&w.devs[0]).unwrap_err(),
        Errno::EBUSY
    );
}

#[test]
fn claim_without_a_group_is_enodev() {
    let w = world(&[("plain", &[])]);
    assert_eq!(
        w.iommu
            .device_claim_dma_owner(&w.devs[0], DmaOwner::new())
            .unwrap_err(),
        Errno::ENODEV
    );
}

#[test]
fn releasing_an_unowned_group_is_a_logged_no_op() {
    let w = world(&[("a", &[1])]);
    let before = snapshot(&w);
    w.iommu.group_release_dma_owner(&w.group_of(0));
    assert_eq!(snapshot(&w), before);
    assert!(w
        .iommu
        .log_lines()
        .iter()
        .any(|l| l.contains("release of a DMA owner")));
}

#[test]
fn the_iova_cookie_is_made_once_lives_with_the_domain_and_a_failed_init_stores_nothing() {
    let w = world(&[]);
    let d = w.iommu.domain_alloc(&w.bus, DomainType::Dma).unwrap();
    assert!(d.iova_cookie().is_none());
    let r: Result<_, Errno> = d.get_or_init_iova_cookie(|_| Err(Errno::ENOMEM));
    assert_eq!(r.err(), Some(Errno::ENOMEM));
    assert!(d.iova_cookie().is_none());
    let made = d
        .get_or_init_iova_cookie::<Errno>(|_| Ok(std::sync::Arc::new(7u32)))
        .unwrap();
    let again = d
        .get_or_init_iova_cookie::<Errno>(|_| panic!("made twice"))
        .unwrap();
    assert!(std::sync::Arc::ptr_eq(&made, &again));
    let weak_cookie = std::sync::Arc::downgrade(&made);
    let weak_domain = d.downgrade();
    drop((made, again, d));
    assert!(weak_domain.upgrade().is_none());
    assert!(
        weak_cookie.upgrade().is_none(),
        "the cookie died with its domain"
    );
}

#[test]
fn a_domain_attaches_only_through_the_iommu_that_allocated_it() {
    // Two IOMMU instances, one per bus: a domain of the first means nothing
    // to the second's hardware.
    let w = world(&[("a", &[1])]);
    let other_bus = Bus::new(&w.iommu, "platform2").unwrap();
    let other = std::sync::Arc::new(MockIommu::new());
    w.iommu.bus_set_iommu(&other_bus, other.clone()).unwrap();
    let b = other_bus
        .add_device(iommu_core::DeviceBuilder::new("b").stream_ids([2]))
        .unwrap();
    let gb = b.iommu_group().unwrap();
    let foreign = w.iommu.domain_alloc(&w.bus, DomainType::Unmanaged).unwrap();
    assert!(!foreign.is_owned_by(&other_bus.iommu_ops().unwrap()));
    let before = snapshot(&w);
    assert_eq!(
        w.iommu.attach_group(&foreign, &gb).unwrap_err(),
        Errno::EINVAL
    );
    assert_eq!(
        w.iommu.attach_device(&foreign, &b).unwrap_err(),
        Errno::EINVAL
    );
    assert_eq!(snapshot(&w), before);
    assert_eq!(gb.domain(), gb.default_domain());
    assert_eq!(
        (w.mock.attached_domain("b"), other.attached_domain("b")),
        (None, gb.default_domain().map(|d| d.id())),
        "neither driver's hardware heard of the foreign domain"
    );
    // Through its own IOMMU it attaches as usual.
    let own = w
        .iommu
        .domain_alloc(&other_bus, DomainType::Unmanaged)
        .unwrap();
    w.iommu.attach_group(&own, &gb).unwrap();
    assert_eq!(other.attached_domain("b"), Some(own.id()));
}

/// A device whose firmware keeps using memory for DMA (a `direct`
/// reserved region, an RMRR) may not have its DMA blocked: claiming its
/// group for a user (VFIO) fails with EINVAL and changes nothing, as
/// Linux's `require_direct` check makes it; a relaxable region does not
/// stand in the way.
#[test]
fn a_group_with_a_direct_region_cannot_be_blocked_for_a_user_but_a_relaxable_one_can() {
    use iommu_core::{DeviceBuilder, Prot, ReservedRegion, ResvType};
    for (ty, claimable) in [(ResvType::Direct, false), (ResvType::DirectRelaxable, true)] {
        let iommu = Iommu::default();
        let bus = Bus::new(&iommu, "pci").unwrap();
        let region = ReservedRegion::new(0x3a00_0000, 0x1_0000, Prot::RW, ty);
        let a = bus
            .add_device(DeviceBuilder::new("a").stream_ids([1]))
            .unwrap();
        let b = bus
            .add_device(DeviceBuilder::new("b").stream_ids([1]).resv_region(region))
            .unwrap();
        iommu
            .bus_set_iommu(&bus, std::sync::Arc::new(MockIommu::new()))
            .unwrap();
        let g = a.iommu_group().unwrap();
        assert_eq!(g.device_count(), 2, "one group: one stream id");
        let w = iommu_core::testing::Snapshot::take(&iommu, &bus, &[]);
        let owner = DmaOwner::new();
        let claim = iommu.group_claim_dma_owner(&g, owner);
        if claimable {
            claim.unwrap();
            assert_eq!(g.domain().map(|d| d.ty()), Some(DomainType::Blocked));
            iommu.group_release_dma_owner(&g);
        } else {
            assert_eq!(claim, Err(Errno::EINVAL), "{ty:?}");
            assert_eq!(g.dma_owner(), None);
            assert_eq!(
                iommu.device_claim_dma_owner(&b, owner),
                Err(Errno::EINVAL),
                "through the device too"
            );
            assert_eq!(g.dma_owner_count(), 0);
        }
        assert_eq!(
            iommu_core::testing::Snapshot::take(&iommu, &bus, &[]),
            w,
            "{ty:?}: the group is as it was"
        );
    }
}
