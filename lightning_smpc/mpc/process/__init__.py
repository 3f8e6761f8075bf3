"""The process runtime, by job: :mod:`.transport` (a party's openings over the links), :mod:`.remote_dealer` (the
parties' side of the crypto provider), :mod:`.dealer_server` (the crypto provider's process), :mod:`.parties`
(links and a party's session), :mod:`.supervisor` (start methods, failure rules, user errors: one set for
``run_parties`` and the Lightning launcher) and :mod:`.launch` (``run_parties``). :mod:`..distributed` is the
public face that gathers them."""
