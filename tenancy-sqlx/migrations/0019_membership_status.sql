-- Membership status (tenancy_core::MembershipStatus: a suspended member is
-- refused until resumed, keeping role and history) and the member's last
-- activity (a sign-in or a renewed session).
ALTER TABLE tenancy.memberships
    ADD COLUMN status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    ADD COLUMN last_active_at timestamptz;
