"""The built-in router template, used when ``--template`` is not given in router mode.

A copy of ``examples/bird/router-bgp.conf.j2`` (a test keeps them identical): installed
with the code, so ``romana bird router-config`` works without the repository checkout.
"""

ROUTER_BGP = """# BIRD configuration of the router of Romana group {{ group | bird_comment }}
# (prefixes {{ cidrs | join(", ") }}). Rendered by romana-publisher --router or
# `romana bird router-config`: edit the template, not this file.
{% if args.log is defined %}
log "{{ args.log | bird_string }}" all;
{% endif %}
{% if router_id is defined %}
router id {{ router_id }};
{% endif %}

protocol device {
  scan time 10;
}

# Routes learned from hosts and from the parent go to the kernel: this router forwards.
protocol kernel {
  ipv4 {
    import none;
    export all;
  };
}
{% if neighbor_ip is defined %}

# The group's own prefix, announced upward as one route: the parent learns one route per
# group, however many hosts and blocks are inside. Unreachable here: an address of the
# group that no host announces is dropped instead of bouncing back to the parent.
protocol static romana_group {
  # Below every learned route: where a host's area is the whole group (a lone host), its
  # route is the one installed here, and the one announced upward.
  ipv4 { preference 10; };
{% for cidr in cidrs %}
  route {{ cidr }} unreachable;
{% endfor %}
}

protocol bgp upstream {
  description "router of the parent group";
  local as {{ local_as }};
  neighbor {{ neighbor_ip }} as {{ neighbor_as }};
  connect delay time 1;
  connect retry time 1;
  ipv4 {
    import all;
    export where net ~ [ {{ cidrs | join(", ") }} ];   # the group's prefix, nothing more
  };
}
{% endif %}
{% for peer in peers %}

# {{ peer.kind }} {{ peer.name | bird_comment }} may announce: {{ peer.prefixes | join(", ") or "nothing" }}
filter {{ peer.proto | bird_symbol }}_import {
{% if peer.allowed %}
  if net ~ [ {{ peer.allowed | join(", ") }} ] then accept;
{% endif %}
  reject;
}

protocol bgp {{ peer.proto | bird_symbol }} {
  description "romana {{ peer.kind }} {{ peer.name | bird_string }}";
  local as {{ local_as }};
  neighbor {{ peer.ip }} as {{ peer.asn or local_as }};
  connect delay time 1;
  connect retry time 1;
  ipv4 {
    import keep filtered on;   # rejected routes stay visible: birdc show route filtered
    import filter {{ peer.proto | bird_symbol }}_import;
{% if peer.kind == "group" %}
    export where source = RTS_BGP;   # each child learns the other children's prefixes
{% else %}
    export none;   # hosts reach everything through their default route to this router
{% endif %}
  };
}
{% endfor %}
"""
