# frozen_string_literal: true

# vm-test's Vagrant front end (required by vm-test.Vagrantfile): the guest's address from
# qemu-guest-agent for a domain without a libvirt NIC.
#
# vagrant-libvirt 0.11 (Debian 12) asks the agent for the address of the interface whose MAC is
# the domain's first libvirt NIC; this domain has none (its only NIC is qemu's, from qemuargs:
# the restricted user network), so it fails on a nil MAC. The agent's first IPv4 address of a
# non-loopback interface says the same thing -- the guest is up and its network configured --
# and vagrant does not use it to connect: ssh goes to 127.0.0.1 (config.ssh.host/port).
require "json"
require "vagrant-libvirt/driver"

module MstackVmAgentAddress
  def get_ipaddress_from_qemu_agent(timeout, _domain = nil)
    reply = get_libvirt_domain.qemu_agent_command(
      '{"execute":"guest-network-get-interfaces"}', timeout
    )
    JSON.parse(reply).fetch("return", []).each do |iface|
      next if iface["name"] == "lo"

      (iface["ip-addresses"] || []).each do |ip|
        return ip["ip-address"] if ip["ip-address-type"] == "ipv4"
      end
    end
    nil
  rescue StandardError => e # the agent is not up yet: vagrant asks again
    @logger&.debug("vm-test: no address from qemu-guest-agent yet: #{e.message}")
    nil
  end
end

VagrantPlugins::ProviderLibvirt::Driver.prepend(MstackVmAgentAddress)
