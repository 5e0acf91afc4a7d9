DROP TABLE staff_users;
DROP TABLE clinics;
DROP TYPE staff_role;
