-- Row-level security for public.users: a user sees and changes only their own row.
--
-- The API creates the row from the token's claims on the user's first write, and refreshes email
-- and name when a later token carries new ones. Users are never deleted through the API.
-- Applying this file replaces every policy on the table, and turns row-level security on and forces
-- it, so the file is exactly what is live (a restore of a dump taken while it was lifted, say).

CALL app.drop_all_policies('public.users');
ALTER TABLE public.users ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.users FORCE ROW LEVEL SECURITY;

CREATE POLICY "users see their own row" ON public.users
    FOR SELECT TO todo_app
    USING (id = (SELECT app.current_user_id()));

CREATE POLICY "users create their own row" ON public.users
    FOR INSERT TO todo_app
    WITH CHECK (id = (SELECT app.current_user_id()));

CREATE POLICY "users update their own row" ON public.users
    FOR UPDATE TO todo_app
    USING (id = (SELECT app.current_user_id()))
    WITH CHECK (id = (SELECT app.current_user_id()));
